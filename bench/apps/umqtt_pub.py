# Pub/sub benchmark anchor: one MQTT publisher on MicroPython with micropython-lib's umqtt.simple (QoS 1:
# each publish waits for its PUBACK). Prints "ready" once connected, waits for a line on stdin, publishes
# COUNT messages "i ms" (i from 1, ms: the send time since the epoch), prints "done" and disconnects.
# argv: host port client_id topic count nodelay (1: TCP_NODELAY on the socket, as a tuned publisher sets it)
import sys
import time
from umqtt.simple import MQTTClient

_IPPROTO_TCP = 6  # the unix port's socket module names neither
_TCP_NODELAY = 1


def main(host, port, client_id, topic, count, nodelay):
    c = MQTTClient(client_id, host, port)
    c.connect()
    if nodelay:
        c.sock.setsockopt(_IPPROTO_TCP, _TCP_NODELAY, 1)
    print("ready")
    sys.stdin.readline()
    for i in range(1, count + 1):
        c.publish(topic, b"%d %d" % (i, time.time_ns() // 1000000), qos=1)
    print("done")
    c.disconnect()


main(sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4].encode(), int(sys.argv[5]), sys.argv[6] == "1")
