"""Content digests: what a file holds, not its name or time (checkpoints, inputs, scored pairs)."""
import hashlib


def file_sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
            h.update(chunk)
    return h.hexdigest()
