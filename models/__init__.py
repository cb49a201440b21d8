"""Detection of lung opacities: configs, weights, preprocessing, detector, phantoms, training, evaluation.

This package knows nothing of networking and never imports ``dicom_node`` or ``twin``.
"""
