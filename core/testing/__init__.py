"""Test kit for telemon drivers and transports (vendors use it to test their own drivers).

`telemon.testing.ble`: a virtual BLE radio (bleak over a bumble virtual link, no Bluetooth
hardware, BlueZ or D-Bus) with virtual GATT peripherals for the Bluetooth SIG health
profiles. It needs the `bumble` package (the `testing` extra); importing this package does
not, so `telemon.testing` stays importable without it.
"""
