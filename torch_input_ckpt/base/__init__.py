"""What every folder builds on: the topology a process runs in (``World``) and constructor argument checks."""
