"""The SSH transport to a SLURM login node: run a command there, copy a directory there, follow a command's
output, all over one connection.

It runs the system ``ssh`` client, so whatever works in the user's terminal works here: ``~/.ssh/config``,
ProxyJump, an agent, keys, their own ControlMaster. Where their config sets no ControlPath, stjobs keeps one
master connection of its own (ControlMaster/ControlPersist, the socket under ``$STJOBS_HOME/ssh``): a status, a
cancel or a followed log costs a multiplexed session, not a new login. Host keys are checked as the user's ssh
checks them; nothing here turns that off.

Knows nothing of SLURM. Commands are shell strings: the login node's shell reads them, so callers build every one
with :func:`quote`. A failure of ssh itself (exit 255) is one line saying what failed: the host could not be
reached, authentication or the host key was refused (:class:`RemoteRefused`, never worth a retry), or the
connection was lost (:class:`ConnectionLost`, which a caller may retry).
"""

from __future__ import annotations

import functools
import hashlib
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stjobs.errors import EnvError, SubmitError
from stjobs.jobs import stjobs_home

SSH_CONFIG_ENV = "STJOBS_SSH_CONFIG"  # an ssh -F file used instead of ~/.ssh/config (CI, the tests)
CONTROL_PERSIST_S = 300  # how long stjobs' master connection stays after its last command
CONNECT_TIMEOUT_S = 20
COPY_TIMEOUT_S = 600  # the job's files and code (snapshot.max_mb, 200 MB by default)
ALIVE_INTERVAL_S = 10  # a connection that stops answering is noticed within ~3 of these, not at TCP's timeout
SOCKET_PATH_MAX = 103  # the longest Unix socket path every OS takes (sun_path is 104 bytes with its NUL on macOS)
SSH_FAILED = 255  # ssh's own exit status; anything else is the remote command's
# ssh's words for failures that trying again will not fix, and what they mean for the user.
REFUSALS = (
    ("REMOTE HOST IDENTIFICATION HAS CHANGED", "the login node's host key is not the one in known_hosts (refused; "
     "if the key really changed, check it with the site and update known_hosts)"),
    ("host key is known", "the login node's host key is unknown (refused; connect once with `ssh {target}` to check "
     "and accept it)"),
    # BatchMode and a host known_hosts lacks: ssh says no more than this.
    ("Host key verification failed", "the login node's host key is not in known_hosts (refused; connect once "
     "with `ssh {target}` to check and accept it)"),
    ("Permission denied", "authentication failed (is your key loaded, e.g. ssh-add, and does `ssh {target}` work?)"),
    ("Too many authentication failures", "authentication failed (too many keys offered; set IdentitiesOnly)"),
    ("Could not resolve hostname", "host unreachable (its name does not resolve)"),
    ("Connection refused", "host unreachable (connection refused)"),
    ("No route to host", "host unreachable (no route to host)"),
    ("Network is unreachable", "host unreachable (network unreachable)"),
    ("Connection timed out", "host unreachable (connection timed out)"),
    ("Operation timed out", "host unreachable (connection timed out)"),
)


class RemoteRefused(SubmitError):
    """ssh could not reach or log in to the login node: trying again would fail the same way."""


class ConnectionLost(SubmitError):
    """The connection to the login node broke (or could not be used) while a command ran: it may have run."""


def quote(word: str | os.PathLike[str]) -> str:
    return shlex.quote(os.fspath(word))


def join(argv: Sequence[str | os.PathLike[str]]) -> str:
    return " ".join(quote(word) for word in argv)


@dataclass(frozen=True)
class Answer:
    """One command's outcome on the login node: its exit status, output and errors, as bytes."""

    code: int
    stdout: bytes
    stderr: bytes


@dataclass(frozen=True)
class Remote:
    """A login node as ssh names it: ``host``, ``user@host`` or an alias of the user's ssh config."""

    target: str

    def ssh(self, *options: str) -> list[str]:
        """The ssh command line up to the destination: the user's config (or $STJOBS_SSH_CONFIG), stjobs' control
        connection unless theirs is set, and no prompt where no one could answer it."""
        return ["ssh", *_base_options(ssh_config()), *_control_options(self.target), *_batch_options(), *options]

    def argv(self, command: str) -> list[str]:
        return [*self.ssh(), "--", self.target, command]

    def run(self, command: str, what: str, stdin: str = "", timeout_s: float = 120.0,
            ok: Sequence[int] = (0,)) -> subprocess.CompletedProcess[str]:
        """Run ``command`` (a shell string) on the login node; ``what`` names it in errors. A remote exit status
        outside ``ok`` is a SubmitError with its last line of stderr; ssh's own failures are as above."""
        done = self._run(self.argv(command), what, timeout_s, input=stdin, text=True)
        if done.returncode == SSH_FAILED:
            raise self.failure(done.stderr, what)
        if done.returncode not in ok:
            raise SubmitError(f"slurm: ssh {self.target}: {what} failed: {last_line(done.stderr or done.stdout)}")
        return done

    def run_all(self, commands: Sequence[Sequence[str]], what: str, timeout_s: float = 120.0) -> list[Answer]:
        """Each argv of ``commands`` run side by side on the login node, all in one ssh command; each one's exit
        status, output and errors (framed by their byte counts, so no output can be mistaken for a frame)."""
        lines = ['stjobs_t=$(mktemp -d) || exit 1', 'trap \'rm -rf "$stjobs_t"\' EXIT']
        for index, argv in enumerate(commands):
            lines.append(f'{{ {join(argv)} >"$stjobs_t/{index}.out" 2>"$stjobs_t/{index}.err" </dev/null; '
                         f'echo $? >"$stjobs_t/{index}.rc"; }} &')
        lines.append("wait")
        for index in range(len(commands)):
            lines.append(f'printf "%s %s %s\\n" "$(cat "$stjobs_t/{index}.rc")" "$(wc -c <"$stjobs_t/{index}.out")" '
                         f'"$(wc -c <"$stjobs_t/{index}.err")"; cat "$stjobs_t/{index}.out" "$stjobs_t/{index}.err"')
        done = self._run(self.argv("\n".join(lines)), what, timeout_s, stdin=subprocess.DEVNULL)
        if done.returncode == SSH_FAILED:
            raise self.failure(done.stderr.decode(errors="replace"), what)
        answers, rest = [], done.stdout
        for _ in commands:
            header, _, rest = rest.partition(b"\n")
            fields = header.split()
            if len(fields) != 3 or not all(field.isdigit() for field in fields):
                said = last_line(done.stderr.decode(errors="replace")) or f"exit {done.returncode}"
                raise SubmitError(f"slurm: ssh {self.target}: {what} failed on the login node: {said}")
            code, out, err = (int(field) for field in fields)
            answers.append(Answer(code, rest[:out], rest[out:out + err]))
            rest = rest[out + err:]
        return answers

    def _run(self, argv: list[str], what: str, timeout_s: float, **options: Any) -> subprocess.CompletedProcess[Any]:
        try:
            return subprocess.run(argv, capture_output=True, timeout=timeout_s, **options)
        except FileNotFoundError:
            raise RemoteRefused(f"slurm: --remote {self.target}: no ssh client on this machine (install OpenSSH)"
                                ) from None
        except subprocess.TimeoutExpired:
            raise ConnectionLost(f"slurm: ssh {self.target}: {what} did not answer in {timeout_s:.0f} s") from None

    def failure(self, stderr: str, what: str) -> SubmitError:
        """ssh's exit 255 as one line: refused (unreachable, authentication, host key) or the connection lost."""
        for words, meaning in REFUSALS:
            if words in stderr:
                return RemoteRefused(f"slurm: ssh {self.target}: {meaning.format(target=self.target)}")
        said = last_line(stderr) or "ssh exited 255"
        return ConnectionLost(f"slurm: ssh {self.target}: connection lost during {what} ({said})")

    def popen(self, command: str) -> subprocess.Popen[bytes]:
        """``command`` running on the login node, its output a pipe here and its input a pipe the caller holds
        open: closing it is how the remote side is told to stop (see :func:`until_stdin_closes`)."""
        return subprocess.Popen(self.argv(command), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)

    def copy_dir(self, local: Path, remote_dir: str, rsync: bool) -> None:
        """``local``'s contents into ``remote_dir`` (which exists; home-relative or absolute) on the login node:
        rsync over this same ssh where both ends have it, else tar through ssh."""
        ssh = self.ssh()
        # rsync splits -e at spaces and honours quotes, but no backslash: such a path goes the tar way.
        if rsync and shutil.which("rsync") and not any("'" in word or "\\" in word for word in ssh):
            # -s: the remote path reaches the remote rsync as one word, even from an old rsync there.
            argv = ["rsync", "-a", "-s", "--", f"{local}/", f"{self.target}:{remote_dir}/"]
            argv[1:1] = ["-e", join(ssh)]
            done = self._run(argv, f"the copy to {remote_dir}", COPY_TIMEOUT_S, text=True)
            if done.returncode != 0:
                raise self._copy_failure(done.stderr, remote_dir)
            return
        tar = subprocess.Popen(["tar", "-C", str(local), "-cf", "-", "."], stdout=subprocess.PIPE)
        try:
            done = self._run(self.argv(f"tar -C {quote(remote_dir)} -xf -"), f"the copy to {remote_dir}",
                             COPY_TIMEOUT_S, stdin=tar.stdout, text=True)
        finally:
            if tar.stdout is not None:
                tar.stdout.close()
            tar.wait()
        if done.returncode != 0 or tar.returncode != 0:
            raise self._copy_failure(done.stderr, remote_dir, done.returncode)

    def _copy_failure(self, stderr: str, remote_dir: str, code: int | None = None) -> SubmitError:
        if code == SSH_FAILED or "connection unexpectedly closed" in stderr or "Broken pipe" in stderr:
            return self.failure(stderr, f"the copy to {remote_dir}")
        return SubmitError(f"slurm: ssh {self.target}: copying the job to {remote_dir} on the login node failed: "
                           f"{last_line(stderr)}")

def ssh_config() -> str | None:
    """$STJOBS_SSH_CONFIG: a file ssh reads instead of ~/.ssh/config (``ssh -F``); unset or empty, none."""
    given = os.environ.get(SSH_CONFIG_ENV) or None
    if given is not None and not os.path.isfile(given):
        raise EnvError(SSH_CONFIG_ENV, given, "an ssh config file, as ssh -F takes (it is not a file; unset it to "
                       "use your ~/.ssh/config)")
    return given


def until_stdin_closes(command: str) -> str:
    """``command`` run in the background on the login node and killed once ssh's input ends: a ``tail -F`` there
    must not outlive the ssh here that reads it (no pty: sshd would leave it running, writing to nobody)."""
    return f"{command} & stjobs_pid=$!; cat >/dev/null; kill $stjobs_pid 2>/dev/null; wait $stjobs_pid 2>/dev/null"


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _base_options(config: str | None) -> list[str]:
    options = ["-F", config] if config else []
    # -T: no pty (a command's output is bytes, not a terminal's); keepalives: a dead link is noticed.
    return [*options, "-T", "-o", f"ConnectTimeout={CONNECT_TIMEOUT_S}", "-o",
            f"ServerAliveInterval={ALIVE_INTERVAL_S}", "-o", "ServerAliveCountMax=3"]


def _batch_options() -> list[str]:
    # A passphrase or password can be asked on a terminal (the master connection then serves the rest); without
    # one ssh must fail at once instead of waiting on a prompt no one sees.
    return [] if sys.stdin is not None and sys.stdin.isatty() else ["-o", "BatchMode=yes"]


def _control_options(target: str) -> tuple[str, ...]:
    return _control_for(target, ssh_config(), str(stjobs_home()))


@functools.lru_cache(maxsize=16)
def _control_for(target: str, config: str | None, home: str) -> tuple[str, ...]:
    """stjobs' own master connection, unless the user's ssh config already names a ControlPath (then theirs is
    used as they set it up). ``ssh -G`` prints the config ssh would use, without connecting."""
    try:
        shown = subprocess.run(["ssh", *(["-F", config] if config else []), "-G", "--", target],
                               capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return ()
    if any(line.startswith("controlpath ") for line in shown.stdout.splitlines()):
        return ()
    return ("-o", "ControlMaster=auto", "-o", f"ControlPersist={CONTROL_PERSIST_S}", "-o",
            f"ControlPath={_control_dir(Path(home))}/%C")


def _control_dir(home: Path) -> Path:
    """Where the master sockets live: private (the socket is a logged-in connection), and short enough for a
    socket's path (about 104 bytes; %C is 40 more), else a private directory under /tmp of this STJOBS_HOME's
    own (two homes never share a master connection)."""
    folder = home / "ssh"
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    # ssh binds "<ControlPath>.<16 random characters>" first, then renames it: %C's 40 characters and that suffix
    # must fit in sun_path with the directory (104 bytes on the BSDs and macOS, 108 on Linux).
    if len(str(folder)) + len(f"/{'0' * 40}.{'0' * 16}") > SOCKET_PATH_MAX:
        base = Path("/tmp") / f"stjobs-ssh-{os.getuid()}"
        _private_dir(base)
        folder = base / hashlib.sha256(str(home.resolve()).encode()).hexdigest()[:12]
    _private_dir(folder)
    return folder


def _private_dir(folder: Path) -> None:
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    if folder.stat().st_uid != os.getuid() or folder.stat().st_mode & 0o077:
        raise SubmitError(f"slurm: {folder}: the ssh control directory must be yours alone (mode 0700)")
