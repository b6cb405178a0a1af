"""A real RTSP server on loopback for stream tests: GStreamer's RTSP server (gst-rtsp-server).

Run with the system Python that has PyGObject (Debian: python3-gi, gir1.2-gst-rtsp-server-1.0,
gstreamer1.0-plugins-good):

    /usr/bin/python3 tests/testkit/rtsp_server.py PORT VIDEO.mp4

Serves VIDEO (MPEG-4 part 2 or H.264 in MP4, as OpenCV's VideoWriter writes it) at
rtsp://127.0.0.1:PORT/test; each client gets its own playback, looped at its end.
Prints "ready" once listening.
"""
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402


def main() -> None:
    port, video = sys.argv[1], sys.argv[2]
    codec = sys.argv[3] if len(sys.argv) > 3 else "mpeg4"
    Gst.init(None)
    parse, pay = ("mpeg4videoparse", "rtpmp4vpay") if codec == "mpeg4" else ("h264parse", "rtph264pay")
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(port)
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(f"( filesrc location={video} ! qtdemux ! {parse} ! {pay} name=pay0 pt=96 config-interval=1 )")
    factory.set_shared(False)
    server.get_mount_points().add_factory("/test", factory)
    if server.attach(None) == 0:
        print("cannot listen", flush=True)
        sys.exit(1)
    print("ready", flush=True)
    GLib.MainLoop().run()


if __name__ == "__main__":
    main()
