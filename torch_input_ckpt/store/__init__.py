"""Input-checkpoint files on disk: names, format, checks on read, restore planning, the lock, the writer, lineage."""
