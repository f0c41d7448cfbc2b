"""Security settings of a run: capabilities by name, Docker's default seccomp profile."""
