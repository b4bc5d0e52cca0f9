"""mailbridge: the email gateway for secure practice messaging."""

__version__ = "0.1.0"
