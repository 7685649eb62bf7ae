"""Encryption of images: a set key derived from the password with Argon2id (keys.py), and
AES-256-GCM per chunk and per section (aead.py). Only the header and footer stay plain."""
