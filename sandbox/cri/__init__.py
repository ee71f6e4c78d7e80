"""The CRI backend, by concern: ``backend.CriBackend`` is the facade (see its module doc).

Kept free of imports: ``python -m sandbox.cri.relay`` starts without loading the rest.
"""
