"""The operator's commands: deploy, stop, status, check, render."""
