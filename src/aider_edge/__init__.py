"""aider-edge."""
