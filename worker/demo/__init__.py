"""`itmguard demo`: the whole pipeline on one machine, with embedded services and real photos.

The only part of `worker` that may import `export` (it builds the starter model).
"""
