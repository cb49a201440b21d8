"""DICOMweb (PS3.18): the node's second front door (STOW-RS in, QIDO-RS, WADO-RS) and its second kind
of destination (STOW-RS out), over the same ingest and the same outbox as DIMSE."""
