"""The match-action IR: the one representation every engine and the verifier read.

Nothing in this package imports from the rest of the project; backends and the
verifier import only from here.
"""
