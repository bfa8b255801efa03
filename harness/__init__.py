"""The overnight loop: agents propose, the harness trains, judges, reports and keeps the best."""
