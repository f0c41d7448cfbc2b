"""The container's root, from the runner's side: plan.py decides what it is made of;
inside/root.py builds it in PID 1's mount namespace."""
