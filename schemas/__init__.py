"""JSON Schema files for every message on an itmguard topic.

Shipped as package data so an installed worker validates against exactly the
files in this folder.
"""
