# frozen_string_literal: true

require "tempfile"

# A real Sidekiq process (`sidekiq -r FILE`) on the private Redis, for interop specs: Debian's 6.4.1,
# or under `../shared/peers/with-sidekiq 7|8` (bin/test-interop) that version's own CLI.
# Jobs on the Sidekiq side record what they received in the Redis list "results".
class SidekiqProcess
  ROOT = File.expand_path("../..", __dir__)

  attr_reader :log

  def initialize(require_file, queues: %w[default critical])
    @require_file = require_file
    @queues = queues
    @log = Tempfile.new(["sidekiq", ".log"])
  end

  def start
    env = {"REDIS_URL" => REDIS_SERVER.url, "RUBYLIB" => [File.join(ROOT, "lib"), ENV["RUBYLIB"]].compact.join(":")}
    cli = ENV["SIDEKIQ_PEER_ROOT"] ? ["ruby", File.join(ENV["SIDEKIQ_PEER_ROOT"], "bin/sidekiq")] : ["sidekiq"]
    @pid = Process.spawn(env, *cli, "-r", @require_file, "-c", "3", *@queues.flat_map { |q| ["-q", q] },
      chdir: ROOT, in: File::NULL, out: @log.path, err: [:child, :out])
    self
  end

  def stop
    return unless @pid

    Process.kill("TERM", @pid)
    deadline = Time.now + 15
    sleep 0.05 until Process.wait(@pid, Process::WNOHANG) || Time.now > deadline
    Process.kill("KILL", @pid) if Time.now > deadline
  rescue Errno::ESRCH, Errno::ECHILD
    nil
  ensure
    @pid = nil
  end

  # The "results" entries, waiting until there are `count` of them (or failing with the log).
  def results(redis, count, timeout: 30)
    deadline = Time.now + timeout
    loop do
      entries = redis.lrange("results", 0, -1).map { |json| JSON.parse(json) }
      return entries if entries.size >= count
      if Time.now > deadline
        raise "expected #{count} results from Sidekiq, got #{entries.size}:\n#{entries.inspect}\n--- sidekiq log ---\n#{File.read(@log.path)}"
      end

      sleep 0.05
    end
  end
end
