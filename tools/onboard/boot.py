# boot.py installed by `ndn-edge deploy`: start joining Wi-Fi early (boards with `network`);
# main.py waits for it. Runs after every reset, before main.py.
try:
    import ndn_boot
    ndn_boot.start_network()
except Exception as e:  # a board must reach its REPL even when Wi-Fi is misconfigured
    print("boot.py:", repr(e))
