"""skinscreen core: the contracts all services share: clinical encoding, preprocessing, cards."""
