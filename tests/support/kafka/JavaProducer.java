/*
 * A Kafka producer on Kafka's own Java client, driven line by line from stdin: how tests
 * write topics the way JVM producers (Kafka Connect, Streams, Flink, Spring) write them.
 *
 * Run in Java 17 source-file mode, with no build step:
 *
 *   java -cp '.cache/kafka/4.1.1/*' tests/support/kafka/JavaProducer.java \
 *        --bootstrap 127.0.0.1:9092 --topic events [--config key=value ...]
 *
 * Every --config pair goes into the producer's Properties (compression.type=zstd,
 * transactional.id=t1, acks=all, linger.ms=5, security settings, ...); keys and values are
 * byte arrays. With transactional.id set, initTransactions() runs before "ready".
 *
 * Commands, one per line on stdin, fields separated by exactly one space, run in order as
 * they arrive:
 *   send <partition|-> <timestamp_ms|-> <key_base64|-> <value_base64|->
 *        "-" is none: no partition (the partitioner decides), no timestamp (the producer's
 *        clock), a null key, a null value (a tombstone). An empty field is empty bytes.
 *   begin | commit | abort     the transaction calls; abort flushes first, so the aborted
 *                              records really are in the log (their offsets consumed)
 *   flush                      producer.flush()
 *
 * Lines on stdout (each flushed as written; logs go to stderr):
 *   ready                      the producer is built (and its transactions initialized)
 *   ack <index> <partition> <offset>    a send was acknowledged; index = 0-based order of
 *                                       the send commands
 *   error <index> <message>    a send failed
 *   error - <message>          a command failed (commit, abort, begin, flush, bad input)
 *   begun | committed | aborted         the transaction command completed
 *   flushed <n>                the flush completed; n sends are acknowledged so far
 *
 * At the end of stdin: flush, close, exit 0; or exit 1 if anything failed. A malformed
 * command line is reported and ends the program (exit 2).
 */

import java.io.BufferedReader;
import java.io.FileDescriptor;
import java.io.FileOutputStream;
import java.io.InputStreamReader;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Base64;
import java.util.List;
import java.util.Properties;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.concurrent.atomic.AtomicInteger;

import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.common.serialization.ByteArraySerializer;

public class JavaProducer {
    private static final Duration CLOSE_TIMEOUT = Duration.ofSeconds(60);

    /** The protocol channel: the real stdout. System.out itself is pointed at stderr. */
    private static PrintStream protocol;

    private static final AtomicInteger acknowledged = new AtomicInteger();
    private static final AtomicBoolean failed = new AtomicBoolean();

    public static void main(String[] args) throws Exception {
        protocol = new PrintStream(new FileOutputStream(FileDescriptor.out), false, StandardCharsets.UTF_8);
        // Anything else that prints to System.out (a logging default) goes to stderr.
        System.setOut(System.err);

        String bootstrap = null;
        String topic = null;
        Properties props = new Properties();
        for (int i = 0; i < args.length; i++) {
            String flag = args[i];
            if (i + 1 >= args.length) {
                usage("missing the value of " + flag);
            }
            String value = args[++i];
            switch (flag) {
                case "--bootstrap" -> bootstrap = value;
                case "--topic" -> topic = value;
                case "--config" -> {
                    int eq = value.indexOf('=');
                    if (eq <= 0) {
                        usage("--config wants key=value, got " + value);
                    }
                    props.setProperty(value.substring(0, eq), value.substring(eq + 1));
                }
                default -> usage("unknown option " + flag);
            }
        }
        if (bootstrap == null || topic == null) {
            usage("--bootstrap and --topic are required");
        }
        props.setProperty(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);

        KafkaProducer<byte[], byte[]> producer =
                new KafkaProducer<>(props, new ByteArraySerializer(), new ByteArraySerializer());
        int status;
        try {
            if (props.getProperty(ProducerConfig.TRANSACTIONAL_ID_CONFIG) != null) {
                producer.initTransactions();
            }
            say("ready");
            status = run(producer, topic);
        } finally {
            producer.close(CLOSE_TIMEOUT);
        }
        protocol.flush();
        System.exit(status != 0 ? status : failed.get() ? 1 : 0);
    }

    private static int run(KafkaProducer<byte[], byte[]> producer, String topic) throws Exception {
        BufferedReader in = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));
        int sends = 0;
        String line;
        while ((line = in.readLine()) != null) {
            if (line.isEmpty()) {
                continue;
            }
            String[] fields = line.split(" ", -1);
            try {
                switch (fields[0]) {
                    case "send" -> {
                        if (fields.length != 5) {
                            throw new IllegalArgumentException("send wants 4 fields");
                        }
                        ProducerRecord<byte[], byte[]> record = new ProducerRecord<>(
                                topic,
                                fields[1].equals("-") ? null : Integer.valueOf(fields[1]),
                                fields[2].equals("-") ? null : Long.valueOf(fields[2]),
                                bytes(fields[3]),
                                bytes(fields[4]));
                        send(producer, record, sends++);
                    }
                    case "begin" -> command("begun", producer::beginTransaction);
                    case "commit" -> command("committed", producer::commitTransaction);
                    case "abort" -> command("aborted", () -> {
                        producer.flush();
                        producer.abortTransaction();
                    });
                    case "flush" -> {
                        command(null, producer::flush);
                        say("flushed " + acknowledged.get());
                    }
                    default -> throw new IllegalArgumentException("unknown command");
                }
            } catch (IllegalArgumentException e) {
                say("error - bad command line " + quote(line) + ": " + oneLine(e));
                return 2;
            }
        }
        producer.flush();
        return 0;
    }

    private static void send(KafkaProducer<byte[], byte[]> producer, ProducerRecord<byte[], byte[]> record, int index) {
        try {
            producer.send(record, (metadata, exception) -> {
                if (exception != null) {
                    fail(Integer.toString(index), exception);
                } else {
                    acknowledged.incrementAndGet();
                    say("ack " + index + " " + metadata.partition() + " " + metadata.offset());
                }
            });
        } catch (RuntimeException e) {
            fail(Integer.toString(index), e);
        }
    }

    private static void command(String reply, Runnable action) {
        try {
            action.run();
        } catch (RuntimeException e) {
            fail("-", e);
            return;
        }
        if (reply != null) {
            say(reply);
        }
    }

    private static void fail(String index, Throwable e) {
        failed.set(true);
        e.printStackTrace();
        say("error " + index + " " + oneLine(e));
    }

    private static byte[] bytes(String field) {
        return field.equals("-") ? null : Base64.getDecoder().decode(field);
    }

    private static synchronized void say(String line) {
        protocol.print(line);
        protocol.print('\n');
        protocol.flush();
    }

    private static String oneLine(Throwable e) {
        List<String> parts = new ArrayList<>();
        for (Throwable t = e; t != null && parts.size() < 4; t = t.getCause()) {
            parts.add(t.getClass().getName() + ": " + t.getMessage());
        }
        return String.join(" <- ", parts).replaceAll("[\\r\\n]+", " ");
    }

    private static String quote(String line) {
        return "'" + (line.length() > 80 ? line.substring(0, 80) + "..." : line) + "'";
    }

    private static void usage(String problem) {
        System.err.println("JavaProducer: " + problem);
        System.err.println("usage: java -cp '<kafka jars>/*' JavaProducer.java"
                + " --bootstrap HOST:PORT --topic TOPIC [--config KEY=VALUE ...]");
        System.exit(2);
    }
}
