# S3 server for bench/run on loopback: s3s-fs (crates.io `s3s-fs` 0.14.1, Rust, Apache-2.0),
# objects stored as plain files under DIR (persistent across restarts), SigV2 and SigV4
# (header and presigned) verified against one key pair, Range answered with 206.
#
# Install (once, ~6 min on one core; rustc >= 1.92; 0.15+ need rustc 1.96):
#   cargo install s3s-fs --version 0.14.1 --features binary --locked --root target/tools/s3s-fs
#
# Use (source this file):
#   export AWS_ACCESS_KEY_ID=... AWS_SECRET_ACCESS_KEY=...   # the server's one key pair
#   pid=$(s3_server_start DIR PORT LOGFILE)                  # or: s3_server_start ...; pid=$S3_SERVER_PID
#   wait_port PORT "$pid"                                     # bench/run's own helper
#   s3_curl -X PUT "http://127.0.0.1:PORT/BUCKET"             # make a bucket (signed: unsigned is 403)
#   git annex initremote s3 type=S3 host=127.0.0.1 port=PORT protocol=http requeststyle=path \
#       encryption=none bucket=BUCKET                         # default signature (v2); NOT signature=v4
#   s3_server_stop "$pid"
#
# When s3_server_start runs inside $(...), the server is not a child of the calling shell:
# `wait PID` there returns at once (use s3_server_stop, which polls until it has exited).

# s3_server_bin: the s3s-fs binary ($S3S_FS, else on PATH, else under the project's tools).
s3_server_bin() {
    local b
    for b in "${S3S_FS:-}" "$(command -v s3s-fs 2>/dev/null)" \
             "${ROOT:-$(pwd)}/target/tools/s3s-fs/bin/s3s-fs"; do
        [ -n "$b" ] && [ -x "$b" ] && { echo "$b"; return 0; }
    done
    echo "s3s-fs not found (set S3S_FS, or: cargo install s3s-fs --version 0.14.1 --features binary --locked --root target/tools/s3s-fs)" >&2
    return 1
}

# s3_server_start DIR PORT LOGFILE: starts s3s-fs in the background on 127.0.0.1:PORT with
# its data under DIR (made if missing; buckets are DIR's subdirectories) and the key pair of
# AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY; echoes its PID (also left in S3_SERVER_PID).
# Does not wait for the port (bench/run's wait_port does).
#
# With S3_SERVER_FRONT=nginx: nginx listens on 127.0.0.1:PORT and answers GET/HEAD of objects
# that exist straight from DIR (sendfile, Range -> 206; no signature check on those, as with
# moto, which checks none); every other request (PUT, DELETE, listings, bucket requests,
# missing objects) goes to s3s-fs on 127.0.0.2:PORT, which verifies its signature (the Host
# header is passed unchanged). The PID echoed is then a small bash supervisor: killing it
# stops both, and it exits when either does. nginx's own files go to DIR.nginx/.
s3_server_start() {
    local dir="$1" port="$2" log="$3" bin
    [ $# -eq 3 ] || { echo "usage: s3_server_start DIR PORT LOGFILE" >&2; return 2; }
    [ -n "${AWS_ACCESS_KEY_ID:-}" ] && [ -n "${AWS_SECRET_ACCESS_KEY:-}" ] ||
        { echo "s3_server_start: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY must be set (the server's key pair)" >&2; return 1; }
    bin=$(s3_server_bin) || return 1
    mkdir -p "$dir" || return 1
    dir=$(cd "$dir" && pwd)
    case "${S3_SERVER_FRONT:-}" in
    "")
        # Only errors are logged (RUST_LOG unset): one multi-line entry per refused request.
        # stdin from /dev/null and output to the log, so $(s3_server_start ...) returns at once.
        "$bin" --host 127.0.0.1 --port "$port" \
            --access-key "$AWS_ACCESS_KEY_ID" --secret-key "$AWS_SECRET_ACCESS_KEY" \
            "$dir" < /dev/null > "$log" 2>&1 &
        ;;
    nginx)
        command -v nginx > /dev/null || { echo "s3_server_start: nginx not found" >&2; return 1; }
        local n="$dir.nginx"
        mkdir -p "$n/tmp" || return 1
        cat > "$n/nginx.conf" <<CONF
daemon off; user root; worker_processes 1; error_log $n/error.log; pid $n/nginx.pid;
events { worker_connections 1024; }
http {
    client_body_temp_path $n/tmp; proxy_temp_path $n/tmp; fastcgi_temp_path $n/tmp;
    uwsgi_temp_path $n/tmp; scgi_temp_path $n/tmp;
    sendfile on; tcp_nopush on; access_log off; default_type application/octet-stream;
    client_max_body_size 0; proxy_request_buffering off; proxy_buffering off;
    proxy_http_version 1.1;
    server {
        listen 127.0.0.1:$port;
        root $dir;
        location / {
            error_page 418 = @s3;
            if (\$request_method !~ ^(GET|HEAD)\$) { return 418; }
            try_files \$uri @s3;
        }
        location @s3 {
            proxy_pass http://127.0.0.2:$port;
            proxy_set_header Host \$http_host;
            proxy_set_header Connection "";
        }
    }
}
CONF
        # nginx starts only once s3s-fs listens, so that PORT answering means both are up.
        (
            a='' b=''
            trap 'kill $a $b 2>/dev/null; wait; exit 0' TERM INT
            "$bin" --host 127.0.0.2 --port "$port" \
                --access-key "$AWS_ACCESS_KEY_ID" --secret-key "$AWS_SECRET_ACCESS_KEY" \
                "$dir" < /dev/null > "$log" 2>&1 & a=$!
            for _ in $(seq 300); do
                kill -0 $a 2>/dev/null || exit 1
                (exec 3<>"/dev/tcp/127.0.0.2/$port") 2>/dev/null && break
                sleep 0.1
            done
            nginx -c "$n/nginx.conf" -p "$n" < /dev/null >> "$n/error.log" 2>&1 & b=$!
            wait -n; kill $a $b 2>/dev/null; wait; exit 1
        ) < /dev/null > /dev/null 2>&1 &
        ;;
    *) echo "s3_server_start: S3_SERVER_FRONT is '' or nginx" >&2; return 2 ;;
    esac
    S3_SERVER_PID=$!
    echo "$S3_SERVER_PID"
}

# s3_server_stop PID: ends the server and waits (up to 10 s) until it has exited.
s3_server_stop() {
    local pid="$1" _
    kill "$pid" 2>/dev/null || return 0
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null; return 0
}

# s3_curl ARGS...: curl with a SigV4 header signature made from the environment's key pair
# (curl >= 7.75). For bucket creation, HEAD checks and small objects, e.g.
#   s3_curl -sf -o /dev/null -X PUT http://127.0.0.1:PORT/BUCKET
#   printf %s "$uuid" | s3_curl -sf -o /dev/null -X PUT --data-binary @- http://127.0.0.1:PORT/BUCKET/annex-uuid
# x-amz-content-sha256 is required by s3s and not added by Debian 12's curl 7.88.
s3_curl() {
    curl --aws-sigv4 "aws:amz:us-east-1:s3" --user "$AWS_ACCESS_KEY_ID:$AWS_SECRET_ACCESS_KEY" \
        -H "x-amz-content-sha256: UNSIGNED-PAYLOAD" "$@"
}

# s3_server_install: builds s3s-fs into the project's tools once (crates.io; a few minutes).
s3_server_install() {
    s3_server_bin > /dev/null 2>&1 && return 0
    echo "building s3s-fs 0.14.1 (the benchmarks' S3 server) into target/tools/s3s-fs" >&2
    cargo install -q s3s-fs --version 0.14.1 --features binary --locked --root "${ROOT:-$(pwd)}/target/tools/s3s-fs"
}
