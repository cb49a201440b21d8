"""The device twin: every X-ray modality's identity, configuration, usage, faults, maintenance and health.

Fed by the headers of the instances the node receives (:mod:`twin.headers`) and by each modality's
sidecar log (:mod:`twin.sidecar`), kept in ``twin_*`` tables of the node's database
(:mod:`twin.store`), judged by :mod:`twin.health` and run periodically by :mod:`twin.jobs`.
This package never imports ``dicom_node`` or ``models``. See docs/twin.md.
"""
