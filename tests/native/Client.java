// A reconnect loop with java.net.Socket: ATTEMPTS sequential dials to 127.0.0.1:PORT,
// each writing a line and waiting for a reply. Prints one JSON object.
//   java Client.java PORT ATTEMPTS      (single-file source launch)
import java.io.InputStream;
import java.io.OutputStream;
import java.net.ConnectException;
import java.net.InetSocketAddress;
import java.net.Socket;
import java.net.SocketTimeoutException;
import java.nio.charset.StandardCharsets;

public class Client {
    public static void main(String[] args) throws Exception {
        int port = Integer.parseInt(args[0]);
        int attempts = Integer.parseInt(args[1]);
        int ownBytes = 0, otherReply = 0, noReply = 0, refused = 0, otherError = 0;
        String lastError = "";
        for (int i = 0; i < attempts; i++) {
            byte[] line = ("hello " + i + "\n").getBytes(StandardCharsets.US_ASCII);
            try (Socket sock = new Socket()) {
                sock.connect(new InetSocketAddress("127.0.0.1", port), 2000);
                sock.setSoTimeout(2000);
                OutputStream out = sock.getOutputStream();
                out.write(line);
                out.flush();
                InputStream in = sock.getInputStream();
                byte[] reply = new byte[64];
                int got = in.read(reply);
                if (got == line.length && new String(reply, 0, got, StandardCharsets.US_ASCII)
                        .equals(new String(line, StandardCharsets.US_ASCII))) {
                    ownBytes++;
                } else if (got > 0) {
                    otherReply++;
                } else {
                    noReply++;
                }
            } catch (ConnectException e) {
                if (String.valueOf(e.getMessage()).contains("refused")) {
                    refused++;
                } else {
                    otherError++;
                    lastError = String.valueOf(e.getMessage());
                }
            } catch (SocketTimeoutException e) {
                noReply++;
            } catch (Exception e) {
                otherError++;
                lastError = e.toString();
            }
        }
        System.out.printf("{\"own_bytes\": %d, \"other_reply\": %d, \"no_reply\": %d, \"refused\": %d, "
                + "\"other_error\": %d, \"last_error\": \"%s\"}%n",
                ownBytes, otherReply, noReply, refused, otherError, lastError.replace("\"", "'"));
    }
}
