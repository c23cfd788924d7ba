# Device benchmark app (Microdot 2.x): the same three services as HTTP routes plus GET /memtotal,
# used only for measuring. Runs on MicroPython. argv: port (bound on 127.0.0.1)
import sys
import json
import micropython
from microdot import Microdot

app = Microdot()
count = [0]
JSON = {"Content-Type": "application/json"}


@app.get("/temperature")
def temperature(request):
    return json.dumps(21.5), {"Content-Type": "application/json", "Cache-Control": "max-age=2"}


@app.post("/echo")
def echo(request):
    return request.json


@app.post("/counter")
def counter(request):
    count[0] += 1
    return json.dumps(count[0]), JSON


@app.get("/memtotal")
def memtotal(request):
    return json.dumps(micropython.mem_total()), JSON


app.run(host="127.0.0.1", port=int(sys.argv[1]))
