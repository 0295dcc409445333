"""The served lab's ForceCommand: hand this SSH session to the lab's fork server.

Run by sshd for every command and SFTP session as ``python -S -E _forward.py
SOCKET LABDIR`` (a file, not a module of the package: it imports only
interpreter built-ins, so it starts in a few milliseconds). It passes its
stdin, stdout and stderr (sshd's pipes) and its environment (``SSH_CONNECTION``,
``SSH_ORIGINAL_COMMAND``, ``SSH_USER_AUTH``...) over the UNIX socket to
``runner.lab.forkserver``, whose forked child runs the session
(``runner.lab.serve.session_main``) on those very descriptors, and exits with
the exit code the server sends back. When the server cannot be reached, it
runs the session itself (``python -S -m runner.lab.serve session``): slower,
the same behaviour.
"""
import os
import sys

import _socket
import _struct


def _fallback(lab_dir: str) -> None:
    os.execv(sys.executable, [sys.executable, "-S", "-m", "runner.lab.serve", "session", "--dir", lab_dir])


def main() -> None:
    sock_path, lab_dir = sys.argv[1], sys.argv[2]
    try:
        s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        s.connect(sock_path)
    except OSError:
        _fallback(lab_dir)
        return
    env = b"\0".join(k + b"=" + v for k, v in os.environb.items())
    body = os.getcwdb() + b"\0\0" + env
    try:
        s.sendmsg([_struct.pack("!I", len(body)) + body],
                  [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, _struct.pack("3i", 0, 1, 2))])
    except OSError:   # nothing was handed over: run the session here
        s.close()
        _fallback(lab_dir)
        return
    answer = b""
    try:
        while len(answer) < 4:
            chunk = s.recv(4 - len(answer))
            if not chunk:
                break
            answer += chunk
    except OSError:
        answer = b""
    # no answer: the server died with the session (a lost connection, as on a real host)
    os._exit(_struct.unpack("!i", answer)[0] if len(answer) == 4 else 255)


if __name__ == "__main__":
    main()
