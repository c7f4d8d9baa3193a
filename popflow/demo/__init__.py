"""``popflow demo``: a self-contained tour on loopback — sample mailbox, config, one full poll."""
