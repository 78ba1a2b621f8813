"""Helpers shared by the tests: small structures and batches (:mod:`.structures`), running
the stock ``fairchem`` command on generated data (:mod:`.fairchem_run`)."""
