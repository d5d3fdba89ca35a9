"""The top room: the umbrella `tutor` command, which may use every other room."""
