#!/usr/bin/env python3
"""Applies reflect2 v1.0.2's mapiterinit fix to the v1.0.1 copy vendored in Kubernetes 1.20.

Under Go >= 1.18 `reflect.mapiterinit` fills a caller-provided hiter instead of returning one;
v1.0.1's declaration makes it write through garbage and the API server dies in mapiterinit.
Idempotent: running it on an already patched tree changes nothing.
"""
import pathlib
import sys

root = pathlib.Path(sys.argv[1])

OLD_DECL = "func mapiterinit(rtype unsafe.Pointer, m unsafe.Pointer) *hiter\n"
NEW_DECL = "func mapiterinit(rtype unsafe.Pointer, m unsafe.Pointer, it *hiter)\n"
OLD_HITER = """type hiter struct {
	key   unsafe.Pointer // Must be in first position.  Write nil to indicate iteration end (see cmd/internal/gc/range.go).
	value unsafe.Pointer // Must be in second position (see cmd/internal/gc/range.go).
	// rest fields are ignored
}
"""
NEW_HITER = """type hiter struct {
	key         unsafe.Pointer
	value       unsafe.Pointer
	t           unsafe.Pointer
	h           unsafe.Pointer
	buckets     unsafe.Pointer
	bptr        unsafe.Pointer
	overflow    *[]unsafe.Pointer
	oldoverflow *[]unsafe.Pointer
	startBucket uintptr
	offset      uint8
	wrapped     bool
	B           uint8
	i           uint8
	bucket      uintptr
	checkBucket uintptr
}
"""
OLD_ITER = """	return &UnsafeMapIterator{
		hiter:      mapiterinit(type2.rtype, *(*unsafe.Pointer)(obj)),
		pKeyRType:  type2.pKeyRType,
		pElemRType: type2.pElemRType,
	}
"""
NEW_ITER = """	var it hiter
	mapiterinit(type2.rtype, *(*unsafe.Pointer)(obj), &it)
	return &UnsafeMapIterator{
		hiter:      &it,
		pKeyRType:  type2.pKeyRType,
		pElemRType: type2.pElemRType,
	}
"""


def patch(name, pairs):
    path = root / name
    text = path.read_text()
    for old, new in pairs:
        if new in text:
            continue
        if old not in text:
            sys.exit(f"patch-reflect2: {path} does not hold the expected v1.0.1 code")
        text = text.replace(old, new, 1)
    path.write_text(text)


patch("unsafe_link.go", [(OLD_DECL, NEW_DECL), (OLD_HITER, NEW_HITER)])
patch("unsafe_map.go", [(OLD_ITER, NEW_ITER)])
print("patch-reflect2: applied", file=sys.stderr)
