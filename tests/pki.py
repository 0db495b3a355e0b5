"""A throwaway certificate authority for tests, made with the `openssl` binary at run time.

    pki = make_pki(tmp_path)                      # CA + a broker certificate for 127.0.0.1/localhost
    pki.issue("alice")                            # a client certificate with CN=alice
    pki.ca, pki.cert("broker"), pki.key("broker") # paths
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

OPENSSL = shutil.which("openssl")
needs_openssl = pytest.mark.skipif(OPENSSL is None, reason="the openssl binary is not installed")
_CURVE = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]  # fast to generate


def _run(*args: str, cwd: Path) -> None:
    subprocess.run([OPENSSL, *args], cwd=cwd, check=True, capture_output=True, timeout=30)


@dataclass
class Pki:
    root: Path

    @property
    def ca(self) -> str:
        return str(self.root / "ca.pem")

    def cert(self, name: str) -> str:
        return str(self.root / f"{name}.pem")

    def key(self, name: str) -> str:
        return str(self.root / f"{name}.key")

    def issue(self, name: str, *, server: bool = False) -> None:
        """A certificate with CN=name signed by the CA (for 127.0.0.1 and localhost when server)."""
        ext = self.root / f"{name}.ext"
        lines = ["basicConstraints=critical,CA:FALSE", "keyUsage=critical,digitalSignature,keyEncipherment",
                 "extendedKeyUsage=serverAuth,clientAuth", "subjectKeyIdentifier=hash",
                 "authorityKeyIdentifier=keyid,issuer"]
        if server:
            lines.append("subjectAltName=DNS:localhost,IP:127.0.0.1")
        ext.write_text("\n".join(lines) + "\n")
        _run("req", *_CURVE, "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}",
             cwd=self.root)
        _run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", f"{name}.pem", "-days", "2", "-extfile", ext.name, cwd=self.root)


def make_pki(root: Path) -> Pki:
    root.mkdir(parents=True, exist_ok=True)
    _run("req", "-x509", *_CURVE, "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
         "-subj", "/CN=tidelog test CA", "-addext", "basicConstraints=critical,CA:TRUE",
         "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=root)
    pki = Pki(root)
    pki.issue("broker", server=True)
    return pki
