"""CURVE keys for the mask publisher, and the ``iapc keys`` command that makes them.

A key folder (``iapc keys --out DIR``) holds, all owner-only (folders 0700, files 0600)::

    DIR/server.key           the runtime's public key: give it to clients
    DIR/server.key_secret    the runtime's key pair: stays on the vehicle
    DIR/client.key[_secret]  a first client key pair (more with --clients a b c)
    DIR/authorized/*.key     the allow-list: public keys of the clients that may subscribe

``iapc-runtime --curve-keys DIR`` encrypts the PUB socket with the server key pair and admits only
clients whose public key is in ``DIR/authorized`` (pyzmq's ZAP authenticator,
``ThreadAuthenticator.configure_curve``); any other client receives nothing. To admit another
client, copy its ``NAME.key`` (public part only) into ``DIR/authorized``; restart the runtime.
"""

from __future__ import annotations

import argparse
import os
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path

import zmq

from iapc.errors import UserError

SERVER_NAME = "server"
AUTHORIZED_DIR = "authorized"
PUBLIC_SUFFIX = ".key"
SECRET_SUFFIX = ".key_secret"


@dataclass(frozen=True)
class CurveServerKeys:
    public: bytes  # Z85, 40 bytes
    secret: bytes
    authorized_dir: Path  # public keys of the clients allowed to subscribe


@dataclass(frozen=True)
class CurveClientKeys:
    public: bytes
    secret: bytes


def make_owner_only(path: Path) -> None:
    """chmod 0700 for a folder, 0600 for a file."""
    os.chmod(path, 0o700 if path.is_dir() else 0o600)


def check_owner_only(path: Path) -> None:
    """UserError if group or others may read or write ``path`` (a secret or its folder)."""
    mode = stat.S_IMODE(os.stat(path).st_mode)
    if mode & 0o077:
        fix = "chmod 700" if path.is_dir() else "chmod 600"
        raise UserError(f"{path} is readable by other users (mode {mode:o}): run '{fix} {path}'")


def generate_keys(out_dir: str | os.PathLike, clients: tuple[str, ...] = ("client",)) -> Path:
    """Make a server key pair, client key pairs and the allow-list in ``out_dir``; returns it.

    Existing keys are kept (UserError): overwriting them would lock out every client.
    """
    import zmq.auth

    out = Path(out_dir)
    if (out / (SERVER_NAME + SECRET_SUFFIX)).exists():
        raise UserError(f"{out} already holds keys: choose another --out or remove it first")
    authorized = out / AUTHORIZED_DIR
    authorized.mkdir(mode=0o700, parents=True, exist_ok=True)
    for name in (SERVER_NAME, *clients):
        public, secret = zmq.auth.create_certificates(out, name)
        for path in (Path(public), Path(secret)):
            make_owner_only(path)
        if name != SERVER_NAME:
            shutil.copyfile(public, authorized / Path(public).name)
            make_owner_only(authorized / Path(public).name)
    make_owner_only(out)
    make_owner_only(authorized)
    return out


def _load(path: Path, secret: bool) -> tuple[bytes, bytes | None]:
    import zmq.auth

    if not path.is_file():
        raise UserError(f"key file {path} does not exist: make keys with 'iapc keys --out DIR'")
    if secret:
        check_owner_only(path)
    try:
        public, secret_key = zmq.auth.load_certificate(path)
    except (ValueError, OSError) as err:
        raise UserError(f"{path} is not a ZeroMQ CURVE certificate ({err}): make keys with "
                        "'iapc keys --out DIR'") from None
    if secret and secret_key is None:
        raise UserError(f"{path} holds no secret key: give the NAME{SECRET_SUFFIX} file")
    return public, secret_key


def load_server_keys(key_dir: str | os.PathLike) -> CurveServerKeys:
    """The runtime's key pair and allow-list from a folder made by :func:`generate_keys`."""
    key_dir = Path(key_dir)
    if not key_dir.is_dir():
        raise UserError(f"--curve-keys {key_dir} is not a folder: make one with "
                        "'iapc keys --out DIR'")
    check_owner_only(key_dir)
    public, secret = _load(key_dir / (SERVER_NAME + SECRET_SUFFIX), secret=True)
    authorized = key_dir / AUTHORIZED_DIR
    if not authorized.is_dir() or not any(authorized.glob("*" + PUBLIC_SUFFIX)):
        raise UserError(f"{authorized} holds no client keys: copy each client's NAME.key there")
    return CurveServerKeys(public, secret, authorized)


def load_client_keys(secret_file: str | os.PathLike) -> CurveClientKeys:
    """A client key pair from its ``NAME.key_secret`` file."""
    public, secret = _load(Path(secret_file), secret=True)
    return CurveClientKeys(public, secret)


def load_public_key(public_file: str | os.PathLike) -> bytes:
    """The public key in a ``NAME.key`` file (e.g. the server's, for a client)."""
    return _load(Path(public_file), secret=False)[0]


def start_authenticator(context: zmq.Context, authorized_dir: Path):
    """A running ZAP authenticator on ``context`` admitting the CURVE keys in ``authorized_dir``.

    Call ``.stop()`` on the result before terminating the context.
    """
    from zmq.auth.thread import ThreadAuthenticator

    auth = ThreadAuthenticator(context)
    auth.start()
    auth.configure_curve(domain="*", location=str(authorized_dir))
    return auth


def secure_server_socket(socket: zmq.Socket, keys: CurveServerKeys) -> None:
    """Make ``socket`` a CURVE server (before bind): encrypted, clients authenticated by ZAP."""
    socket.curve_secretkey = keys.secret
    socket.curve_publickey = keys.public
    socket.curve_server = True


def secure_client_socket(socket: zmq.Socket, server_public: bytes, keys: CurveClientKeys) -> None:
    """Make ``socket`` a CURVE client of the server with ``server_public`` (before connect)."""
    socket.curve_serverkey = server_public
    socket.curve_publickey = keys.public
    socket.curve_secretkey = keys.secret


# -- the 'iapc keys' command ------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="folder for the keys (created owner-only)")
    parser.add_argument("--clients", nargs="+", default=["client"], metavar="NAME",
                        help="client key pairs to make and allow (default: client)")


def run(args: argparse.Namespace) -> int:
    out = generate_keys(args.out, tuple(args.clients))
    print(f"keys in {out}: run 'iapc-runtime --curve-keys {out} --publish tcp://0.0.0.0:5555'; "
          f"give each client {out / (SERVER_NAME + PUBLIC_SUFFIX)} and its own NAME.key_secret")
    return 0
