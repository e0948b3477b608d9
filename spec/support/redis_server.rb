# frozen_string_literal: true

require "socket"
require "tmpdir"
require "fileutils"

# A private redis-server in a temporary directory, on a free loopback port (never 6379).
class RedisServer
  attr_reader :port

  def self.start
    # A free port can be taken between our probe and redis-server's bind; try a few.
    5.times do
      server = new(free_port)
      return server if server.start
    end
    raise "redis-server did not start; is it installed (apt-get install redis-server)?"
  end

  def self.free_port
    probe = TCPServer.new("127.0.0.1", 0)
    probe.addr[1]
  ensure
    probe&.close
  end

  def initialize(port)
    @port = port
    @dir = Dir.mktmpdir("rustq-spec-redis-")
  end

  def url
    "redis://127.0.0.1:#{port}/0"
  end

  def start
    @pid = Process.spawn(
      "redis-server", "--port", port.to_s, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
      "--dir", @dir, "--logfile", File.join(@dir, "redis.log"),
      in: File::NULL, out: File::NULL, err: File::NULL
    )
    deadline = Time.now + 10
    until Time.now > deadline
      return true if ping
      return false if Process.wait(@pid, Process::WNOHANG)

      sleep 0.02
    end
    stop
    false
  end

  def stop
    return unless @pid

    Process.kill("KILL", @pid)
    Process.wait(@pid)
  rescue Errno::ESRCH, Errno::ECHILD
    nil
  ensure
    @pid = nil
    FileUtils.rm_rf(@dir)
  end

  private

  def ping
    Socket.tcp("127.0.0.1", port, connect_timeout: 0.2) do |socket|
      socket.write("PING\r\n")
      socket.wait_readable(0.2) && socket.readpartial(16).start_with?("+PONG")
    end
  rescue SystemCallError, IOError
    false
  end
end
