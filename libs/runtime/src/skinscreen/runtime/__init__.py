"""skinscreen runtime: what gateway and inference share, so it is defined in one place."""
