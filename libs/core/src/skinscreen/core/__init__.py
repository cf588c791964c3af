"""skinscreen core: the contracts every service shares (clinical encoding, preprocessing, model cards)."""
