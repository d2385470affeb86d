"""Indexing and retrieval helpers: descriptor matching and geometric verification.

Submodules are imported explicitly (``from delfx.index import geometry``) so that importing the
package stays cheap and pulls in neither OpenCV nor FAISS.
"""
