"""qemu-based tests of other cgroup layouts (see harness.py)."""
