"""The container's root: plan.py decides what it is made of (parent side); mounts.py builds
it inside the child's mount namespace. Nothing is imported here, so the child side stays free
of the parent's imports (argparse and friends)."""
