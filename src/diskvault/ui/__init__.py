"""Progress reporting: one small interface, a Rich bar on a TTY, silence otherwise."""
