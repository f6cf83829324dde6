"""The teaching app: plots, the demo's figures, the demo, the explorer, the CLI and the assignment graders."""
