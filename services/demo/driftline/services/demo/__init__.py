"""`make demo`: the whole Driftline loop on the local stack, with a live view and a report."""
