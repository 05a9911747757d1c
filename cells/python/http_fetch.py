# http_fetch: GET a URL whose host is on the cell's network allowlist.
# The worker has no socket() or connect(): every connection, including each
# redirect's, is asked of the supervisor's connection broker through
# mcpcell.connect, which checks the allowlist in the supervisor.
import http.client
import urllib.parse

import mcpcell

MAX_REDIRECTS = 5


class BrokeredHTTP(http.client.HTTPConnection):
    def connect(self):
        self.sock = mcpcell.connect(self.host, self.port, self.timeout)


class BrokeredHTTPS(http.client.HTTPSConnection):
    def connect(self):
        sock = mcpcell.connect(self.host, self.port, self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


def fetch_once(url, max_bytes, timeout):
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise mcpcell.ToolError(f"only http and https URLs with a host can be fetched, not {url!r}")
    if parts.username or parts.password:
        raise mcpcell.ToolError("URLs with credentials are refused")
    conn_class = BrokeredHTTPS if parts.scheme == "https" else BrokeredHTTP
    conn = conn_class(parts.hostname, parts.port, timeout=timeout)
    target = urllib.parse.urlunsplit(("", "", parts.path or "/", parts.query, ""))
    conn.request("GET", target, headers={"User-Agent": "mcp-supervisor-http-fetch/1", "Accept-Encoding": "identity"})
    response = conn.getresponse()
    body = response.read(max_bytes + 1)
    conn.close()
    return response, body


@mcpcell.tool("http_fetch")
def http_fetch(args, ctx):
    url = args["url"]
    max_bytes = args.get("maxBytes", 262144)
    timeout = args.get("timeoutSeconds", 10)
    try:
        for _ in range(MAX_REDIRECTS + 1):
            response, body = fetch_once(url, max_bytes, timeout)
            location = response.getheader("Location")
            if response.status in (301, 302, 303, 307, 308) and location:
                url = urllib.parse.urljoin(url, location)
                ctx.log("info", f"redirected to {url}")
                continue
            break
        else:
            raise mcpcell.ToolError(f"more than {MAX_REDIRECTS} redirects")
    except mcpcell.NetworkRefused as e:
        raise mcpcell.ToolError(f"connection refused by the supervisor: {e}") from None
    except OSError as e:
        raise mcpcell.ToolError(f"network error: {e}") from None
    truncated = len(body) > max_bytes
    body = body[:max_bytes]
    content_type = response.getheader("Content-Type", "")
    text = body.decode(response.headers.get_content_charset() or "utf-8", errors="replace")
    return mcpcell.Result(text, {"url": url, "status": response.status, "contentType": content_type,
                                 "truncated": truncated, "bytes": len(body)})


mcpcell.serve()
