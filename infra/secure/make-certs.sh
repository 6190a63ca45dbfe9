#!/bin/sh
# Certificates for docker-compose.secure.yml: a private CA, and a key + certificate for each of
# `kafka` and `redis` (their compose host names), written to ./secrets/ (git-ignored). Replace them
# with your organisation's certificates in production.
set -eu
out="${1:-secrets}"
mkdir -p "$out"
cd "$out"
openssl req -x509 -newkey rsa:2048 -nodes -days 825 -subj "/CN=driftloop-ca" \
  -keyout ca-key.pem -out ca.pem 2>/dev/null
for host in kafka redis; do
  openssl req -newkey rsa:2048 -nodes -subj "/CN=$host" -keyout "$host-key.pem" -out "$host.csr" 2>/dev/null
  printf "subjectAltName=DNS:%s,DNS:localhost,IP:127.0.0.1\n" "$host" > "$host.ext"
  openssl x509 -req -in "$host.csr" -CA ca.pem -CAkey ca-key.pem -CAcreateserial -days 825 \
    -extfile "$host.ext" -out "$host.pem" 2>/dev/null
  rm "$host.csr" "$host.ext"
done
cat kafka-key.pem kafka.pem > kafka-keystore.pem  # Kafka's PEM keystore: key, then certificate
chmod 600 ./*-key.pem kafka-keystore.pem
echo "certificates in $(pwd): ca.pem, kafka.pem, redis.pem (+ keys)"
