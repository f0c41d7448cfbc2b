"""Images: the local OCI store, the hardened layer unpacker, the built-in images (hello-world,
busybox, scratch, host), archives (docker save / OCI) and what an image gives a run
(Entrypoint, Cmd, Env, WorkingDir, User). Runs in the runner, never in PID 1."""
