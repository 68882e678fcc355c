"""A real Python client (pika) for setgate's end-to-end tests.

Usage: pika_client.py AMQP_URI QUEUE COUNT
Connects (through setgate), publishes COUNT persistent messages with publisher confirms, consumes
and acks them, and prints one JSON line with what it saw. Exits non-zero on any failure.
"""
import json
import sys

import pika


def main():
    uri, queue, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    params = pika.URLParameters(uri)
    params.socket_timeout = 10
    params.blocked_connection_timeout = 10
    conn = pika.BlockingConnection(params)
    ch = conn.channel()
    ch.confirm_delivery()
    ch.queue_declare(queue=queue, durable=True)
    for i in range(count):
        # With confirm_delivery, basic_publish raises if the broker nacks or returns the message.
        ch.basic_publish(
            exchange="",
            routing_key=queue,
            body=f"pika-{i}".encode(),
            properties=pika.BasicProperties(delivery_mode=2),
            mandatory=True,
        )
    got = []
    for method, _props, body in ch.consume(queue, inactivity_timeout=10):
        if method is None:
            break
        got.append(body.decode())
        ch.basic_ack(method.delivery_tag)
        if len(got) == count:
            break
    ch.cancel()
    expected = [f"pika-{i}" for i in range(count)]
    product = conn._impl.server_properties.get("product", b"")
    conn.close()
    print(json.dumps({"client": "pika", "published": count, "consumed": len(got), "in_order": got == expected,
                      "server_product": product.decode() if isinstance(product, bytes) else str(product)}))
    sys.exit(0 if got == expected else 1)


if __name__ == "__main__":
    main()
