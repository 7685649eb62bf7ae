"""Backup plans: definitions saved as XML (definition.py), what a plan calls for and when
(templates.py, cron.py), running one (run.py: lock.py, resolve.py, inventory.py, retention.py,
history.py, notify.py), and running them on time (systemd.py units, scheduler.py built-in loop,
scripts.py generated scripts).

    definition.xml -> run_definition -> image (+ merge) -> retention -> history row -> mail
"""
