"""infusion_tf.provenance: what every results.json records about the code and the machine."""

import hashlib
import re
import subprocess

from infusion_tf import provenance


def test_environment_names_the_commit_the_process_started_with():
    env = provenance.environment()
    head = subprocess.run(["git", "-C", str(provenance.REPO), "rev-parse", "HEAD"], capture_output=True,
                          text=True).stdout.strip()
    if not head:  # not a git checkout (an installed copy): nothing to name
        assert env["git_commit"] is None
        return
    assert re.fullmatch(r"[0-9a-f]{40}", env["git_commit"])
    assert env["git_commit"] == provenance._COMMIT_AT_START == head  # nothing was committed during the tests
    assert env["cores_available"] >= 1 and env["tensorflow"] and isinstance(env["gpus"], list)


def test_file_sha256_matches_hashlib_across_block_boundaries(tmp_path):
    data = bytes(range(256)) * 8193  # a little over 2 MiB: more than one read block
    path = tmp_path / "weights.h5"
    path.write_bytes(data)
    assert provenance.file_sha256(str(path)) == hashlib.sha256(data).hexdigest()
