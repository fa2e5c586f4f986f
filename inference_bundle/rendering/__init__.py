"""Rendering: catalog entries into Globus Compute endpoint directories, and loading them back."""
