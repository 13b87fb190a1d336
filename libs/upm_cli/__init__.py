"""The `upm` command: run services, apply migrations, and operate upm from a terminal."""
