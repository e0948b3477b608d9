# frozen_string_literal: true

# The ceiling for any client that pushes one job at a time: `ruby bench/ruby/floor.rb MODE N`.
# A bare TCP socket writes the same prepared bytes a push writes (SADD queues + LPUSH of a
# Sidekiq-sized payload, in one write) and waits for both replies, N times: no client library,
# no job built, only the round trip: no Ruby client that waits for Redis's answer can push
# faster. Only host and port are read from REDIS_URL (no password, database or TLS: the bench's
# own Redis needs none).
#   MODE: sleep (a blocking read: the thread sleeps until Redis answers)
#         spin  (non-blocking reads in a loop until Redis answers)
# Prints {"jobs": N, "seconds": S} on stdout. REDIS_URL names the Redis (redis://host:port).
require "json"
require "socket"
require "uri"

mode, count = ARGV[0], Integer(ARGV[1])
abort "mode must be sleep or spin" unless %w[sleep spin].include?(mode)
WARMUP = 200

uri = URI(ENV.fetch("REDIS_URL"))
socket = TCPSocket.new(uri.host, uri.port || 6379)
socket.setsockopt(Socket::IPPROTO_TCP, Socket::TCP_NODELAY, 1)

def command(*words)
  "*#{words.size}\r\n" + words.map { |w| "$#{w.bytesize}\r\n#{w}\r\n" }.join
end

payload = %({"retry":true,"queue":"default","args":[1,"bench"],"class":"NoopJob","jid":"0123456789abcdef01234567","created_at":1795000000.1234567,"enqueued_at":1795000000.1234567})
PUSH = (command("SADD", "queues", "default") + command("LPUSH", "queue:default", payload)).freeze

# Both replies are integers (":1\r\n"): done at the second line end.
push = lambda do |*|
  socket.write(PUSH)
  replies = +""
  until replies.count("\n") >= 2
    chunk = mode == "spin" ? socket.read_nonblock(64, exception: false) : socket.readpartial(64)
    raise EOFError, "Redis closed the connection" if chunk.nil?

    replies << chunk if chunk.is_a?(String)
  end
  abort "Redis refused the push: #{replies.inspect}" unless replies.lines.all? { |line| line.start_with?(":") }
end

WARMUP.times(&push)
started = Process.clock_gettime(Process::CLOCK_MONOTONIC)
count.times(&push)
seconds = Process.clock_gettime(Process::CLOCK_MONOTONIC) - started
puts JSON.generate("jobs" => count, "seconds" => seconds)
