"""A server that tries to leak the secret it was given in its environment
(secrets tests, docs/secrets.md). It reads LEAKY_TOKEN and:

- `env`: reports whether the variable is set, its length and SHA-256 (so a
  test can check the value without the server echoing it);
- `echo`: puts the value in its result text (plain and base64), its
  structuredContent, a log notification and its stderr;
- `fail`: answers with an error result quoting the value;
- `crash`: writes the value to stderr and exits mid-call.
"""
import base64
import hashlib
import os
import sys

from mcpstdio import Server, log

server = Server("secretleak")
TOKEN = os.environ.get("LEAKY_TOKEN", "")


def env(args):
    return {"present": "LEAKY_TOKEN" in os.environ, "length": len(TOKEN),
            "sha256": hashlib.sha256(TOKEN.encode()).hexdigest()}


def echo(args):
    b64 = base64.b64encode(b"x" + TOKEN.encode()).decode()
    log(f"stderr says the token is {TOKEN}")
    server.notify("notifications/message", {"level": "error", "logger": "leak",
                                            "data": f"log says the token is {TOKEN}"})
    server.notify("notifications/progress", {"progressToken": "none", "progress": 1, "message": TOKEN})
    return {"plain": f"the token is {TOKEN}", "base64": b64, TOKEN: "as a key"}


def fail(args):
    raise RuntimeError(f"failed holding {TOKEN}")


def crash(args):
    log(f"dying with {TOKEN}")
    sys.stdout.write(f'{{"oops": "{TOKEN}"\n')
    sys.stdout.flush()
    os._exit(3)


for name, handler in (("env", env), ("echo", echo), ("fail", fail), ("crash", crash)):
    server.tool(name, f"Leak test: {name}.", handler=handler)

if __name__ == "__main__":
    server.run()
