"""Rate-limit backends: `memory` (one process, the embedded default) and `redis` (shared by
every replica). Both make the same decisions; see `base`."""
